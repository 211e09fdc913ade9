# crab-rt: the two commands of the README's quick start.
#   make test   create .venv, install crab-rt with dev extras, lint, run the whole test suite (pytest, and the
#               C++ client beside it; PYTEST_ARGS passes options to pytest), print the time it took
#   make lint   ruff (configured in pyproject.toml)
#   make demo   speak a corpus (espeak-ng), transcribe it (Whisper tiny.en), train a tiny Crab and its
#               speech-only and text-only ablations, compare them with the classical baselines, export a
#               bundle, stream a spoken conversation and a real recording (samples/jfk.flac) at real time
#   make mic-stack  (root + apt) PortAudio, PulseAudio, ALSA's pulse plugin, sox and PyAudio for the
#               real-microphone tests; `make test` tries it first and goes on without it
#   make browser    (root + apt) Chromium and chromedriver for the browser tests; `make test` tries it too
#   make cpp-test / cpp-asan-test  the C++ client (clients/cpp, CMakeLists.txt): build with CMake into build/cpp
#               (build/cpp-asan: AddressSanitizer + UndefinedBehaviorSanitizer) and run ctest; `make test` runs both
#               beside pytest (CPP=0 skips them); cpp-deps installs the Debian packages when root
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The dev/CI install pins torch's CPU build (a local wheel on the project's machines);
# users installing crab-rt[train] keep the package's honest range.
TORCH_SPEC ?= torch==2.13.0
DEMO   ?= demo

.PHONY: install lint test demo mic-apt mic-stack browser clean cpp-deps cpp-build cpp cpp-test cpp-asan-build cpp-asan cpp-asan-test cpp-test-when-ready

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check crab_rt train export data cli benchmarks tests clients

# The order makes use of both cores throughout. First the system packages (apt: PortAudio and PulseAudio for the
# microphone tests, Chromium for the browser tests, the C++ client's libraries), each optional. Then the C++
# client's two builds start in the background, at the lowest priority (nice 19), while pip installs the venv (one
# core); their ctest runs wait for the venv (the live tests start `crab-rt serve` from it) and run beside pytest. One
# pytest process used about one of two cores (servers, subprocesses and real-time streams wait), so pytest runs
# in PYTEST_WORKERS processes (pytest-xdist), each taking whole test files (--dist loadfile: a module's shared
# servers, bundles and Ray cluster stay in one process). At equal priority the C++ builds slowed a torch test 4x.
# Log: build/cpp-test.log, printed in full when it fails. The total time is printed at the end (the project keeps
# it under 10 minutes on 2 cores). PYTEST_WORKERS=0 runs pytest in one process; CPP=0 skips the C++ client.
PYTEST_WORKERS ?= 2
TEST_STARTED := $(shell date +%s)
test:
	@mkdir -p build; rm -f build/.venv-ready build/.venv-failed; \
	$(MAKE) --no-print-directory mic-apt || echo "mic-stack: not available; tests/test_microphone_real.py will skip"; \
	$(MAKE) --no-print-directory browser || echo "browser: not available; tests/test_browser.py will skip"; \
	cpp_pid=""; \
	if [ "$(CPP)" != 0 ]; then \
	    echo "C++ client: building beside the install, testing beside pytest (log: build/cpp-test.log)"; \
	    $(MAKE) --no-print-directory cpp-test-when-ready > build/cpp-test.log 2>&1 & cpp_pid=$$!; \
	fi; \
	if ! $(MAKE) --no-print-directory lint; then \
	    touch build/.venv-failed; [ -z "$$cpp_pid" ] || wait $$cpp_pid; \
	    echo "make test: FAILED: install or lint"; exit 1; \
	fi; \
	touch build/.venv-ready; \
	$(MAKE) --no-print-directory mic-stack || echo "mic-stack: not available; tests/test_microphone_real.py will skip"; \
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); py=$$?; cpp=0; \
	if [ -n "$$cpp_pid" ]; then \
	    wait $$cpp_pid; cpp=$$?; \
	    if [ $$cpp = 0 ]; then grep -E "tests passed|Total Test time" build/cpp-test.log | sed 's/^/C++ client: /'; \
	    else cat build/cpp-test.log; echo "C++ client: FAILED (log above, also in build/cpp-test.log)"; fi; \
	fi; \
	elapsed=$$(( $$(date +%s) - $(TEST_STARTED) )); \
	if [ $$py = 0 ] && [ $$cpp = 0 ]; then \
	    echo "make test: passed in $$((elapsed / 60)) min $$((elapsed % 60)) s (install included)"; \
	else \
	    echo "make test: FAILED after $$((elapsed / 60)) min $$((elapsed % 60)) s (pytest exit $$py, C++ exit $$cpp)"; \
	    exit 1; \
	fi

# Everything offline: espeak-ng and Whisper tiny.en come from the [demo] extra of the dev install. The corpus is
# transcribed with short Whisper windows (--asr-window auto: the clip plus 10 s, several times faster than 30 s);
# `crab-rt baseline` prints the classical baselines (eGeMAPS, TF-IDF, late fusion) beside the three models; the
# listen steps stream at real time (--realtime), so the latencies they print are live figures.
demo: install
	$(BIN)/crab-rt synth --out $(DEMO)/corpus --num 320 --seed 0 --speakers 32 --conversation $(DEMO)/conversation.wav \
	    --quiet
	$(BIN)/crab-rt transcribe-manifest --manifest $(DEMO)/corpus/manifest.csv --out $(DEMO)/corpus/manifest_asr.csv \
	    --asr tiny.en --asr-window auto --all --quiet
	$(BIN)/crab-rt train --recipe synthetic --manifest $(DEMO)/corpus/manifest_asr.csv --out $(DEMO)/run --no-progress
	$(BIN)/crab-rt train --recipe synthetic --ablation speech_only --manifest $(DEMO)/corpus/manifest_asr.csv \
	    --out $(DEMO)/run-speech-only --quiet
	$(BIN)/crab-rt train --recipe synthetic --ablation text_only --manifest $(DEMO)/corpus/manifest_asr.csv \
	    --out $(DEMO)/run-text-only --quiet
	$(BIN)/crab-rt baseline --manifest $(DEMO)/corpus/manifest_asr.csv --checkpoint $(DEMO)/run/best.pt \
	    --checkpoint $(DEMO)/run-speech-only/best.pt --checkpoint $(DEMO)/run-text-only/best.pt --out $(DEMO)/eval \
	    --no-progress
	$(BIN)/crab-rt export --checkpoint $(DEMO)/run/best.pt --out $(DEMO)/bundle --asr tiny.en
	@echo "--- a spoken conversation, streamed at real time (ground truth: $(DEMO)/conversation.json)"
	$(BIN)/crab-rt listen --bundle $(DEMO)/bundle --input $(DEMO)/conversation.wav --realtime --format pretty
	@echo "--- a real human recording (samples/README.md), streamed at real time; each utterance's provisional event"
	@echo "    (the voice alone, before Whisper is done) comes before its final one"
	$(BIN)/crab-rt listen --bundle $(DEMO)/bundle --input samples/jfk.flac --realtime --format pretty --provisional

# The real-microphone tests (tests/test_microphone_real.py) need PortAudio, PulseAudio, ALSA's pulse plugin and
# PyAudio. `make test` runs this first and goes on without it when it cannot install them (not root, no apt-get,
# no registry): those tests then skip and say why. Nothing is installed when everything is already there.
MIC_APT   := portaudio19-dev build-essential pulseaudio pulseaudio-utils libasound2-plugins alsa-utils sox
MIC_TOOLS := pulseaudio paplay pactl
# mic-apt: the system part (also what the C++ client's microphone test builds against); mic-stack adds PyAudio.
mic-apt:
	@if command -v $(MIC_TOOLS) >/dev/null 2>&1 && [ -f /usr/include/portaudio.h ]; then \
	    echo "mic-stack: PortAudio and PulseAudio are installed"; \
	elif [ "$$(id -u)" != 0 ]; then \
	    echo "mic-stack: skipped: not root (apt-get needs root); install: $(MIC_APT), then pip install pyaudio"; \
	    exit 1; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "mic-stack: skipped: no apt-get; install PortAudio, PulseAudio and the ALSA pulse plugin, then pip install pyaudio"; \
	    exit 1; \
	else \
	    set -e; \
	    apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MIC_APT) >/dev/null; \
	    echo "mic-stack: installed $(MIC_APT)"; \
	fi

mic-stack: mic-apt install
	@if $(BIN)/python -c "import pyaudio" 2>/dev/null; then \
	    echo "mic-stack: PyAudio is installed"; \
	else \
	    $(BIN)/python -m pip install -q 'pyaudio>=0.2.13' && echo "mic-stack: installed pyaudio"; \
	fi

# The browser tests (tests/test_browser.py: the page of `crab-rt serve` in headless Chromium, driven by Selenium
# through the system's chromedriver; no browser is downloaded at test time). `make test` runs this first and goes
# on without it when it cannot install them: those tests then skip and say why.
BROWSER_APT := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	    echo "browser: Chromium and chromedriver are installed"; \
	elif [ "$$(id -u)" != 0 ]; then \
	    echo "browser: skipped: not root (apt-get needs root); install: $(BROWSER_APT)"; exit 1; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: skipped: no apt-get; install Chromium and its chromedriver"; exit 1; \
	else \
	    set -e; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_APT) >/dev/null 2>&1 \
	        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_APT) >/dev/null; }; \
	    echo "browser: installed $(BROWSER_APT)"; \
	fi

# The C++ client: Boost.Beast/Asio, nlohmann-json, OpenSSL (wss://), libsndfile (the example); PortAudio (--device)
# comes with mic-stack. cpp-deps installs what is missing when root with apt-get, else names the packages and
# fails (`make test CPP=0` skips the C++ client). Nothing is downloaded at configure time.
CPP_APT        := cmake g++ libboost-dev libssl-dev nlohmann-json3-dev libsndfile1-dev
CPP_BUILD      ?= build/cpp
CPP_ASAN_BUILD ?= build/cpp-asan
CPP_JOBS       ?= 2
# The live tests' tiny bundle, built once and shared by both builds.
CPP_CMAKE_ARGS := -DCRAB_RT_PYTHON=$(abspath $(BIN))/python -DCRAB_RT_TEST_BUNDLE=$(abspath build/cpp-test-bundle)
cpp-deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	[ -f /usr/include/boost/beast.hpp ] || missing="$$missing libboost-dev"; \
	[ -f /usr/include/openssl/ssl.h ] || missing="$$missing libssl-dev"; \
	[ -f /usr/include/nlohmann/json.hpp ] || missing="$$missing nlohmann-json3-dev"; \
	[ -f /usr/include/sndfile.h ] || missing="$$missing libsndfile1-dev"; \
	if [ -z "$$missing" ]; then \
	    echo "cpp-deps: $(CPP_APT) are installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "cpp-deps: missing:$$missing; install them with: sudo apt-get install$$missing" \
	         "(or run make test CPP=0 to skip the C++ client)"; \
	    exit 1; \
	else \
	    set -e; \
	    apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	    echo "cpp-deps: installed$$missing"; \
	fi

# The release build tests everything but the microphone; the sanitizer build (below) takes the microphone test
# (PortAudio's capture thread feeding the client) and is built without TLS: the TLS unit is the slowest to compile
# by far, and a build without OpenSSL must refuse wss:// in one clear line, which it then checks. Building needs
# no venv (cpp-build, cpp-asan-build); the tests do (their live server is the venv's crab-rt).
cpp-build: cpp-deps
	cmake -S . -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release -DCRAB_RT_TEST_MIC=OFF $(CPP_CMAKE_ARGS) --log-level=WARNING
	cmake --build $(CPP_BUILD) -j $(CPP_JOBS)

cpp: cpp-build install

cpp-test: cpp
	ctest --test-dir $(CPP_BUILD) --output-on-failure

# -O0 -g1: half the compile time of -O1 with both sanitizers (Beast's templates), file:line in their reports; no
# consumer project (it would need the sanitizer flags).
cpp-asan-build: cpp-deps
	cmake -S . -B $(CPP_ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
	    -DCMAKE_C_FLAGS_DEBUG="-O0 -g1" -DCRAB_RT_SANITIZE=ON -DCRAB_RT_CLIENT_TLS=OFF -DCRAB_RT_TEST_ASR=none \
	    $(CPP_CMAKE_ARGS) --log-level=WARNING
	cmake --build $(CPP_ASAN_BUILD) -j $(CPP_JOBS)

cpp-asan: cpp-asan-build install

cpp-asan-test: cpp-asan
	ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    ctest --test-dir $(CPP_ASAN_BUILD) --output-on-failure

# make test's background job: both builds (no venv needed) at the lowest priority, then, once make test has
# installed the venv (build/.venv-ready), both ctest runs at normal priority: their live tests mostly wait on
# real-time streams, and starved at nice 19 beside pytest their timing checks failed (a send blocked > 100 ms). It
# gives up when the install failed (build/.venv-failed).
cpp-test-when-ready:
	@nice -n 19 $(MAKE) --no-print-directory cpp-build cpp-asan-build
	@while [ ! -f build/.venv-ready ]; do \
	    if [ -f build/.venv-failed ]; then echo "C++ client: not tested: the venv's install failed"; exit 1; fi; \
	    sleep 1; \
	done
	ctest --test-dir $(CPP_BUILD) --output-on-failure
	ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    ctest --test-dir $(CPP_ASAN_BUILD) --output-on-failure

clean:
	rm -rf $(DEMO) .pytest_cache
