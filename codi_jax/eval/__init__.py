"""Evaluation: the Shapes & Tones oracle (attributes read back by signal analysis), its scores, and a
Griffin-Lim mel inverter for listening to mel outputs without a vocoder."""
