"""`python -m radixlm.launch_server`: SGLang's command name, kept so scripts switch by name only.

The tool itself is `radixlm.entrypoints.launch`."""

from radixlm.entrypoints.launch import main

if __name__ == "__main__":
    main()
