# Homebrew formula for jwt-agent, built from source. For a tap:
#   brew tap-new you/jwt-agent && cp contrib/homebrew/jwt-agent.rb "$(brew --repo you/jwt-agent)/Formula/"
#   brew install --HEAD you/jwt-agent/jwt-agent && brew test you/jwt-agent/jwt-agent
# A release adds `url` and `sha256` of its source archive next to `head`.
class JwtAgent < Formula
  desc "Sign JWTs with keys that never leave a PKCS#11 token (YubiHSM, YubiKey, TPM, HSM)"
  homepage "https://github.com/jwt-agent/jwt-agent"
  head "https://github.com/jwt-agent/jwt-agent.git", branch: "main"

  depends_on "rust" => :build
  depends_on "softhsm" => :test

  def install
    system "cargo", "install", "--profile", "dist", *std_cargo_args
    # The man page and completions come from the binary, so they match its flags.
    (man1/"jwt-agent.1").write Utils.safe_popen_read(bin/"jwt-agent", "man")
    generate_completions_from_executable(bin/"jwt-agent", "completions")
    (pkgshare/"launchd").install "contrib/launchd/jwt-agent.plist"
    (pkgshare/"examples").install "contrib/systemd/config.example.toml"
  end

  def caveats
    <<~EOS
      To run the agent at login, socket-activated by launchd:
        cp #{opt_pkgshare}/launchd/jwt-agent.plist ~/Library/LaunchAgents/
        (edit its paths), then: launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/jwt-agent.plist
      Modules: #{HOMEBREW_PREFIX}/lib/softhsm/libsofthsm2.so (brew install softhsm),
      #{HOMEBREW_PREFIX}/lib/libykcs11.dylib (brew install yubico-piv-tool).
    EOS
  end

  test do
    # A whole round trip on a fresh SoftHSM token: daemon, a key made in the token, a token
    # signed and verified.
    (testpath/"tokens").mkpath
    (testpath/"softhsm2.conf").write <<~EOS
      directories.tokendir = #{testpath}/tokens
      objectstore.backend = file
    EOS
    ENV["SOFTHSM2_CONF"] = (testpath/"softhsm2.conf").to_s
    # softhsm2-util takes PINs on its command line only; the agent reads its PIN from a file.
    system Formula["softhsm"].bin/"softhsm2-util", "--init-token", "--free", "--label", "brew",
           "--pin", "123456", "--so-pin", "654321"
    (testpath/"pin").write "123456\n"
    chmod 0600, testpath/"pin"
    (testpath/"run").mkpath
    chmod 0700, testpath/"run"
    socket = testpath/"run/agent.sock"
    ENV["JWT_AGENT_SOCK"] = socket.to_s
    softhsm = Formula["softhsm"].opt_lib/"softhsm/libsofthsm2.so"
    pid = spawn bin/"jwt-agent", "daemon", "--module", softhsm.to_s, "--token", "brew",
                "--pin-file", (testpath/"pin").to_s
    begin
      100.times do
        break if socket.exist?

        sleep 0.1
      end
      assert_predicate socket, :exist?, "the daemon did not listen"
      system bin/"jwt-agent", "generate", "--label", "k"
      token = shell_output("#{bin}/jwt-agent sign --key k --iss brew --ttl 5m").strip
      assert_match(/\A[\w-]+\.[\w-]+\.[\w-]+\z/, token)
      assert_match '"iss": "brew"', shell_output("#{bin}/jwt-agent verify #{token} --key k")
      assert_match "jwt-agent", shell_output("#{bin}/jwt-agent --version")
    ensure
      Process.kill("TERM", pid)
      Process.wait(pid)
    end
  end
end
