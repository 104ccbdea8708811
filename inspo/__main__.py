from inspo.cli import main

main()
