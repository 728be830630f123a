"""The data layer: text sources, tokenizers and deterministic batches."""

from jaxgpt.data.pipeline import BatchStream, Dataset, build_dataset, eval_batches, fingerprint
from jaxgpt.data.pipeline import BatchSpec, get_batch
from jaxgpt.data.sources import absolute_path
from jaxgpt.data.tokenizer import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from jaxgpt.data.tokenizer import saved_tokenizer

__all__ = ["BPETokenizer", "BatchSpec", "BatchStream", "CharTokenizer", "Dataset",
           "absolute_path", "build_dataset", "build_tokenizer", "eval_batches", "fingerprint", "get_batch",
           "load_tokenizer", "saved_tokenizer"]
