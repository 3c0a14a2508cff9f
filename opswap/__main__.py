from opswap.cli import main

raise SystemExit(main())
