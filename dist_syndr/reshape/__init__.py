"""The two reshaping operations of SynDR-IQA (DDCUp, DRCDown) and their neighbour search."""
