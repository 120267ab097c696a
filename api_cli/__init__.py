"""The `cifarq` command line. It imports shared/ only, never torch (DESIGN.md, decision 2)."""
