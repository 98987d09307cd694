from reconciler.cli import main

main(prog_name="reconciler")  # `python -m reconciler` behaves as the installed command, completion included
