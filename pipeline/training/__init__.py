"""Training steps: build and train the model, evaluate it against the gate, export a SavedModel."""
