from autotransfer.cli import run

run()
