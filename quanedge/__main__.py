from quanedge.cli import main

main()
