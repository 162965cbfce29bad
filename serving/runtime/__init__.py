"""The model runtime: one LiteRT interpreter per worker thread (``interpreter``), and the
activations and gradients that CAM methods need from it (``explain``). numpy and LiteRT only."""
