"""Retrieval-augmented hard negatives (VideoCLIP): faiss index, mined batch plans, the loader's plan provider.

``index`` builds and searches the faiss index, ``plan`` turns embeddings into a batch plan covering
every video, and ``mining`` embeds the corpus with the current model and hands plans to ``TrainLoader``.
"""

import logging

# faiss's loader logs at INFO every CPU-specific build it tries and fails to find; in a training log
# those lines read like errors. Set before any submodule imports faiss.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
