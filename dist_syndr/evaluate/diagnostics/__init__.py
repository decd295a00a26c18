"""How tightly features cluster by content and by distortion: measures, tables and plots."""
