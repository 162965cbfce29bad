"""The serving data path, one small module per stage: decode -> preprocess -> batch -> CAM."""
