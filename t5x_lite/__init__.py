"""t5x_lite: pretraining and fine-tuning of BERT, GPT and T5 families in JAX/Flax."""

# Fill the objective table (t5x_lite.config.objectives): each objective module of the
# data layer registers its row when imported; these modules need only numpy.
from t5x_lite.data import lm, mlm, sentence_pairs, span_corruption, ul2  # noqa: F401

__version__ = "0.1.0"


def load(path: str, step: int | None = None):  # -> t5x_lite.loading.Loaded
    """A trained model from a workdir (latest checkpoint or ``step``) or an HF directory.

    Returns ``config``, ``model``, ``params`` and ``tokenizer`` (see
    :func:`t5x_lite.loading.load`); imported on first call, so ``import t5x_lite``
    stays light.
    """
    from t5x_lite.loading import load as _load

    return _load(path, step)


def pipeline(task: str, path, step: int | None = None, **kwargs):  # -> pipelines.Pipeline
    """A Hugging Face-style pipeline (``text-generation``, ``text2text-generation``,
    ``fill-mask``, ...) over a workdir, an HF directory or a loaded run (see
    :mod:`t5x_lite.pipelines`); imported on first call."""
    from t5x_lite.pipelines import pipeline as _pipeline

    return _pipeline(task, path, step, **kwargs)
