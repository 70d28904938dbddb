from txl_audio.cli import main

raise SystemExit(main())
