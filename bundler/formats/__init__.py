"""The bundle format: manifest model, signing, and archive reading and writing."""
