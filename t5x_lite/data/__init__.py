"""Data layer: corpora (TFDS, no TensorFlow), SentencePiece tokenizer, objectives, grain.

Modules, in the order data flows through them:

* :mod:`~t5x_lite.data.corpora`: ``kjv`` / a directory or glob of files
  (:mod:`~t5x_lite.data.sources`: txt, jsonl[.gz|.zst], Parquet, Arrow) / ``tfds:NAME``
  as array_record TFDS datasets, prepared in units over hosts and cores
  (:mod:`~t5x_lite.data.parallel`).
* :mod:`~t5x_lite.data.tokenizer`: SentencePiece with reserved ids and T5 sentinels.
* :mod:`~t5x_lite.data.token_store`: token ids of a split, computed once (streamed, in
  pieces), memory-mapped; :mod:`~t5x_lite.data.order`: the per-epoch document order.
* :mod:`~t5x_lite.data.packing`, :mod:`~t5x_lite.data.lm`, :mod:`~t5x_lite.data.mlm`,
  :mod:`~t5x_lite.data.sentence_pairs`, :mod:`~t5x_lite.data.span_corruption`,
  :mod:`~t5x_lite.data.ul2`: the objectives, numpy transforms vectorised over rows.
* :mod:`~t5x_lite.data.pipeline`: what the trainer calls (``get_tokenizer``,
  ``train_iterator``, ``eval_batches``, ``lengths``), built on grain.
* :mod:`~t5x_lite.data.stats` and ``python -m t5x_lite.data``: inspection (and
  ``--prepare``); ``python -m t5x_lite.data.prep_bench``: preparation memory and speed.

Importing this package imports nothing heavy; import the modules you need.
"""
