from genbench.report import main

main()
