"""The studio's own embedded models (weights in one folder each) and the training that makes them."""
