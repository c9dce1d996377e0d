"""t5x_lite: pretraining and fine-tuning of BERT, GPT and T5 families in JAX/Flax."""

__version__ = "0.1.0"
