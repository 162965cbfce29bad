"""Images: safe decoding of untrusted bytes within limits (``decode``) and the one resize and
layout both training and serving use (``preprocess``). Pillow and numpy only."""
