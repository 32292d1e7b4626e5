"""Data: the Shapes & Tones world, media I/O, the shared record schema, preprocessing, tokenizers and the
grain input pipelines.

Modules:
  shapes_tones  the procedural world (COLORS, SHAPES, MOTIONS, ONSETS, generate, caption, export CLI)
  media         image / video / audio files and bytes
  records       the ArrayRecord schema every paired dataset is stored in, its writer and reader
  preprocess    image resize + centre crop + [-1, 1]; video frame sampling; audio resampling to 16 kHz,
                mean removal and peak normalisation
  tokenizers    clip / bert / gpt2 tokenizers: small local Shapes & Tones ones, or real ones from files
  pipeline      make_dataset(data_config, global_batch_size=..., process_index, process_count, seed)
  mel           the AudioLDM log-mel front end (jnp)

Batch format (what `pipeline.make_dataset` yields): a dict of numpy arrays whose leading dim is the
per-host batch B = global_batch_size // process_count; only the objective's modalities are present.
  "image"            float32 [B, R, R, 3] in [-1, 1]
  "video"            float32 [B, F, R, R, 3] in [-1, 1]
  "audio"            float32 [B, N] 16 kHz waveform in [-1, 1] (mean removed, peak 0.5)
  "text_ids/<name>"  int32 [B, L] the caption tokenized by each tokenizer the config names
                     (e.g. "text_ids/clip", "text_ids/bert", "text_ids/gpt2"), padded with its pad id
  "color", "shape", "motion", "onset"  int32 [B] Shapes & Tones attributes: indices into COLORS /
                     SHAPES / MOTIONS and the onset frame; -1 for data without attributes
  "index"            int32 [B] the example's index in its split (for tracing and eval)
R, F, N and L come from the config's `preprocess` section.
"""
