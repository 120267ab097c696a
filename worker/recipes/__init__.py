"""The training loops, one per recipe: the tutorial's (the default) and faster ones added beside
it, never in place of it. Each builds on worker/loop.py and worker/model.py only."""
