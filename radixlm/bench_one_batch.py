"""`python -m radixlm.bench_one_batch`: SGLang's command name, kept so scripts switch by name only.

The tool itself is `radixlm.bench.one_batch`."""

from radixlm.bench.one_batch import main

if __name__ == "__main__":
    main()
