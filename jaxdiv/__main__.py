from jaxdiv.cli import main

raise SystemExit(main())
