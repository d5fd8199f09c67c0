"""`python -m radixlm.bench_latency`: SGLang's older name of `bench_one_batch`, kept so scripts switch
by name only (same flags; `--batch` abbreviates `--batch-size`).

The tool itself is `radixlm.bench.one_batch`."""

from radixlm.bench.one_batch import main

if __name__ == "__main__":
    main()
