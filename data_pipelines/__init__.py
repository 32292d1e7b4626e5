"""Dataset preparation: the Shapes & Tones TFDS builder and converters from real paired media to the
shared ArrayRecord schema (codi_jax.data.records). See README.md in this folder."""
