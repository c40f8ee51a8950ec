from wasmq.cli import main

main()
