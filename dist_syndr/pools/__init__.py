"""Datasets as their releases unpack (a reader per layout), our distortion engine, weak labels, score scaling."""
