"""`python -m radixlm.bench_serving`: SGLang's command name, kept so scripts switch by name only.

The tool itself is `radixlm.bench.serving`."""

from radixlm.bench.serving import main

if __name__ == "__main__":
    main()
