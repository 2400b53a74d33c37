from tensorfeed_mcp.cli import main

raise SystemExit(main())
