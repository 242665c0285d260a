"""Embeddings: how a model pools its final hidden states into one vector per request."""
