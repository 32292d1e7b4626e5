"""The paper's evaluation metrics: feature extractors ported from their reference PyTorch implementations
(InceptionV3 as pytorch-fid runs it, PANNs CNN14 as AudioLDM's evaluation runs it, VGGish as FAD runs it,
I3D as FVD runs it), the statistics computed on their features (Frechet distance, inception score, KL),
CLIP / CLAP similarities, captioning metrics through pycocoevalcap, and the sharded, streaming extraction
that feeds them."""
