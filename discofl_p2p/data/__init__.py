"""Package data: the embedded MNIST test split (see README.md here for its licence).
Loaded through `discofl_p2p.ml.load_embedded_mnist`; no code lives here."""
