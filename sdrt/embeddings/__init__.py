"""Textual-inversion embeddings: reading their files (``files``) and finding them in prompts by name, as
AUTOMATIC1111 does (``library``). Torch-free (pickle files, when allowed, are read with torch)."""
