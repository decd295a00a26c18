"""Readers of distortion pools and label sources."""
