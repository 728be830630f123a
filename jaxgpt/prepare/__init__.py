"""`python -m jaxgpt.prepare` (__main__.py): a corpus tokenized once into the token shards that
training reads with data.source=tokens (jaxgpt/data/shards.py)."""
