from streamtune.cli import run

run()
