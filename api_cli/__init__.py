"""The `cifarq` command line. It imports shared/ only, never torch (a client install has none); the
one way into worker/ is `cifarq worker`, which starts worker.launcher on a worker install."""
