"""`python -m radixlm.bench_offline_throughput`: SGLang's command name, kept so scripts switch by name only.

The tool itself is `radixlm.bench.offline_throughput`."""

from radixlm.bench.offline_throughput import main

if __name__ == "__main__":
    main()
