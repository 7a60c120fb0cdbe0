//! The C examples, built with the system `cc` against the built
//! `libhybus_c`, talking to a real daemon and to Rust peers in other
//! processes: a C caller to a Rust service, a Rust caller to a C service.
//! And the C boundary's refusals (NULL, freed and consumed handles, NULL
//! buffers, empty names), called as C calls them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use hybus::{Bus, Incoming};
use hybus_c::bus::*;
use hybus_c::payload::*;
use hybus_c::service::*;
use hybus_c::status::hybus_status::{self, *};

/// Bounds every wait of these tests (a hang becomes a failure).
const SOON: Duration = Duration::from_secs(20);

/// `target/<profile>`, where cargo put `libhybus_c.so` before running this test.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    assert!(dir.join("libhybus_c.so").exists(), "{} has no libhybus_c.so", dir.display());
    dir
}

/// Writes `target/<profile>/hybus.pc` from `hybus.pc.in`, pointing at the build tree.
fn write_pc(lib: &Path) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(here.join("hybus.pc.in")).expect("read hybus.pc.in");
    let pc = template
        .replace("@LIBDIR@", &lib.display().to_string())
        .replace("@INCLUDEDIR@", &here.join("include").display().to_string())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    let path = lib.join("hybus.pc");
    std::fs::write(&path, pc).expect("write hybus.pc");
    path
}

/// The flags `pkg-config` gives for `hybus.pc` in `lib`, or the same flags
/// written out where pkg-config is not installed.
fn c_flags(lib: &Path) -> Vec<String> {
    write_pc(lib);
    let out = Command::new("pkg-config").args(["--cflags", "--libs", "hybus"]).env("PKG_CONFIG_PATH", lib).output();
    match out {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect()
        }
        _ => {
            let inc = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
            vec![
                format!("-I{}", inc.display()),
                format!("-L{}", lib.display()),
                format!("-Wl,-rpath,{}", lib.display()),
                "-lhybus_c".into(),
            ]
        }
    }
}

/// Builds `examples/NAME.c` with the system `cc` into a fresh directory.
fn build_example(name: &str, out_dir: &Path) -> PathBuf {
    let lib = lib_dir();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.c"));
    let exe = out_dir.join(name);
    let out = Command::new("cc")
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .args(c_flags(&lib))
        .output()
        .unwrap_or_else(|e| panic!("cannot run the system C compiler `cc`: {e} (install gcc)"));
    assert!(out.status.success(), "cc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    exe
}

/// A private directory with a daemon running on a thread of this process.
struct Setup {
    dir: PathBuf,
    socket: PathBuf,
    _daemon: hybusd::Embedded,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("hybus-capi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("bus.sock");
        let daemon = hybusd::Embedded::start(&socket, hybusd::Config::default()).expect("start the daemon");
        Setup { dir, socket, _daemon: daemon }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed if the test ends before it does.
struct Proc(Child);

impl Proc {
    fn wait_output(mut self) -> (bool, String) {
        let end = Instant::now() + SOON;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.0.try_wait() {
                let mut out = String::new();
                if let Some(o) = self.0.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut BufReader::new(o), &mut out);
                }
                return (status.success(), out);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the C program did not finish within {SOON:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn c_caller_calls_a_rust_service() {
    let s = Setup::new("caller");
    let exe = build_example("call", &s.dir);
    let server = Bus::connect_to(&s.socket).expect("connect");
    let svc = server.register("demo.rev").expect("register");
    let t = std::thread::spawn(move || {
        // Two calls: the one-shot and the timed run of 100.
        let mut served = 0;
        let end = Instant::now() + SOON;
        while served < 101 && Instant::now() < end {
            if let Ok(Some(Incoming::Request(r))) = svc.next(Duration::from_millis(100)) {
                let mut v = r.payload().to_vec();
                v.reverse();
                r.reply(&v).expect("reply");
                served += 1;
            }
        }
        served
    });
    let run = |args: &[&str]| {
        let child = Command::new(&exe).args(args).arg(&s.socket).stdout(Stdio::piped()).spawn().expect("spawn call");
        Proc(child).wait_output()
    };
    let (ok, out) = run(&["demo.rev", "hello from C", "1"]);
    assert!(ok, "call failed: {out}");
    assert_eq!(out.trim(), "C morf olleh");
    let (ok, out) = run(&["demo.rev", "x", "100"]);
    assert!(ok && out.starts_with("p50_ns="), "timed run: {out}");
    assert_eq!(t.join().expect("server thread"), 101);
}

#[test]
fn rust_caller_calls_a_c_service() {
    let s = Setup::new("service");
    let exe = build_example("echo_service", &s.dir);
    let mut child = Proc(
        Command::new(&exe)
            .args(["demo.upper", "3"])
            .arg(&s.socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo_service"),
    );
    let mut first = String::new();
    BufReader::new(child.0.stdout.as_mut().expect("stdout")).read_line(&mut first).expect("ready line");
    assert_eq!(first.trim(), "ready demo.upper");
    let bus = Bus::connect_to(&s.socket).expect("connect");
    let route = bus.resolve("demo.upper").expect("resolve");
    let a = bus.call(&route, b"hello", SOON).expect("small call");
    assert_eq!(&*a, b"HELLO");
    assert!(!a.is_zero_copy(), "5 bytes travel in the descriptor");
    // Large: the C service reads our chunk in place and answers in a loan.
    let big: Vec<u8> = (0..300_000u32).map(|i| b"abcdefghij"[i as usize % 10]).collect();
    let b = bus.call(&route, &big, SOON).expect("large call");
    assert!(b.is_zero_copy());
    assert!(b.iter().zip(&big).all(|(x, y)| *x == y.to_ascii_uppercase()) && b.len() == big.len());
    drop(b);
    let mut loan = bus.loan(70_000, SOON).expect("loan");
    loan.fill(b'q');
    let c = bus.call_loan(&route, loan, SOON).expect("loan call");
    assert!(c.len() == 70_000 && c.iter().all(|&x| x == b'Q'));
    drop(c);
    let (ok, _) = child.wait_output();
    assert!(ok, "echo_service failed");
    assert_eq!(bus.chunks_in_use(), 0);
}

fn err_text() -> String {
    // SAFETY: the library's message is a NUL-terminated string it keeps.
    unsafe { std::ffi::CStr::from_ptr(hybus_c::hybus_last_error()) }.to_string_lossy().into_owned()
}

#[test]
fn bad_arguments_are_errors_not_crashes() {
    let s = Setup::new("bad");
    let path = std::ffi::CString::new(s.socket.to_str().expect("utf-8 path")).expect("path");
    let mut bus = null_mut();
    assert_eq!(hybus_connect(path.as_ptr(), &mut bus), HYBUS_OK, "{}", err_text());
    // A zero-length name, a NULL name, a NULL out-pointer.
    let mut route = null_mut();
    assert_eq!(hybus_resolve(bus, c"".as_ptr(), &mut route), HYBUS_INVALID_ARGUMENT);
    assert!(err_text().contains("empty"), "{}", err_text());
    assert_eq!(hybus_resolve(bus, null(), &mut route), HYBUS_INVALID_ARGUMENT);
    assert_eq!(hybus_resolve(bus, c"demo.x".as_ptr(), null_mut()), HYBUS_INVALID_ARGUMENT);
    // A NULL handle.
    assert_eq!(hybus_resolve(null(), c"demo.x".as_ptr(), &mut route), HYBUS_INVALID_HANDLE);
    // The real thing, then a NULL buffer with a length.
    let mut svc = null_mut();
    assert_eq!(hybus_register(bus, c"demo.x".as_ptr(), &mut svc), HYBUS_OK, "{}", err_text());
    assert_eq!(hybus_resolve(bus, c"demo.x".as_ptr(), &mut route), HYBUS_OK, "{}", err_text());
    let mut sample = null_mut();
    assert_eq!(hybus_call(bus, route, null(), 5, 1000, &mut sample), HYBUS_INVALID_ARGUMENT);
    assert!(sample.is_null());
    assert_eq!(hybus_fire(bus, route, null(), 1), HYBUS_INVALID_ARGUMENT);
    // A NULL request, a NULL out-pointer.
    let mut ms = 0i64;
    assert_eq!(hybus_request_deadline(null(), &mut ms), HYBUS_INVALID_HANDLE);
    // A handle of another type where a bus goes.
    assert_eq!(hybus_fire(route.cast(), route, null(), 0), HYBUS_INVALID_HANDLE);
    assert!(err_text().contains("not a hybus_bus"), "{}", err_text());
    // No instance answers: a deadline, not a hang.
    assert_eq!(hybus_call(bus, route, c"hi".as_ptr().cast(), 2, 50, &mut sample), HYBUS_DEADLINE_EXCEEDED);
    // A consumed loan, a freed route, a bus closed twice.
    let mut loan = null_mut();
    assert_eq!(hybus_loan_new(bus, 1000, 1000, &mut loan), HYBUS_OK, "{}", err_text());
    assert_eq!(hybus_fire_loan(bus, route, loan), HYBUS_OK, "{}", err_text());
    assert_eq!(hybus_fire_loan(bus, route, loan), HYBUS_INVALID_HANDLE);
    assert!(err_text().contains("freed or consumed"), "{}", err_text());
    assert_eq!(hybus_route_free(route), HYBUS_OK);
    assert_eq!(hybus_fire(bus, route, null(), 0), HYBUS_INVALID_HANDLE);
    assert_eq!(hybus_route_free(route), HYBUS_INVALID_HANDLE);
    assert_eq!(hybus_service_free(svc), HYBUS_OK);
    assert_eq!(hybus_close(bus), HYBUS_OK);
    assert_eq!(hybus_close(bus), HYBUS_INVALID_HANDLE);
    // Freeing NULL is nothing; a made-up status has a name.
    assert_eq!(hybus_close(null_mut()), HYBUS_OK);
    // SAFETY: the names are static NUL-terminated strings.
    let name = |s: i32| unsafe { std::ffi::CStr::from_ptr(hybus_c::status::hybus_status_name(s)) }.to_owned();
    assert_eq!(name(HYBUS_PEER_GONE as i32).to_str().ok(), Some("HYBUS_PEER_GONE"));
    assert_eq!(name(12345).to_str().ok(), Some("HYBUS_UNKNOWN"));
    let _: hybus_status = HYBUS_OK;
}

#[test]
fn no_daemon_is_a_status() {
    let mut bus = null_mut();
    let s = hybus_connect(c"/nonexistent/hybus.sock".as_ptr(), &mut bus);
    assert_eq!(s, HYBUS_NO_DAEMON);
    assert!(bus.is_null());
    assert!(err_text().contains("is hybusd running"), "{}", err_text());
}

#[test]
fn readme_c_program_works_as_written() {
    let s = Setup::new("readme");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let start = readme.find("```c\n").expect("a C block in the README") + 5;
    let program = &readme[start..start + readme[start..].find("```").expect("its end")];
    assert!(program.lines().count() <= 11, "the README's C program grew past ten lines:\n{program}");
    let src = s.dir.join("hello.c");
    std::fs::write(&src, program).expect("write hello.c");
    let lib = lib_dir();
    let inc = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let exe = s.dir.join("hello");
    // The README's build line.
    let out = Command::new("cc")
        .arg(&src)
        .arg("-I")
        .arg(&inc)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lhybus_c", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(out.status.success(), "cc hello.c: {}", String::from_utf8_lossy(&out.stderr));
    let server = Bus::connect_to(&s.socket).expect("connect");
    let svc = server.register("demo.upper").expect("register");
    let t = std::thread::spawn(move || {
        if let Ok(Some(Incoming::Request(r))) = svc.next(SOON) {
            let up = r.payload().to_ascii_uppercase();
            r.reply(&up).expect("reply");
        }
    });
    let child = Command::new(&exe).env("HYBUS_SOCKET", &s.socket).stdout(Stdio::piped()).spawn().expect("spawn hello");
    let (ok, out) = Proc(child).wait_output();
    assert!(ok, "hello failed: {out}");
    assert_eq!(out, "HELLO\n");
    t.join().expect("server");
}
