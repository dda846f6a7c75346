from picolm.cli import main

raise SystemExit(main())
