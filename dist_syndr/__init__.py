"""dist_syndr."""
