"""Studies that reproduce known phenomena of training dynamics."""
