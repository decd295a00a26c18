"""The sharding step: pools -> work items (with DDCUp) -> WebDataset tars + index.json, and reading them back."""
