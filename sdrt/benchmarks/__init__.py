"""``sdrt bench``: latency, memory and output parity of the runtime's backends against diffusers (PyTorch).

torch and diffusers are imported here only for the ``torch`` reference; the sdrt backends run as in production.
"""
