from outrelay.cli import main

main()
