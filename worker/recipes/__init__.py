"""Training steps and recipes beside the tutorial's loop (DESIGN.md, decision 9: added beside it)."""
