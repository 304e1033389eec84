from protloc.cli import main

raise SystemExit(main())
