from stream_trainer.cli import main

raise SystemExit(main())
