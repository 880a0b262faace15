from vitsae_tui.cli import main

raise SystemExit(main())
