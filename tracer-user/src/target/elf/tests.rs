use super::*;

#[test]
fn frame_pointer_prologues() {
    // push %rbp; mov %rsp,%rbp (89 e5 and 8b ec encodings), with and without endbr64.
    assert!(sets_frame_pointer(&[0x55, 0x48, 0x89, 0xe5, 0x41, 0x57]));
    assert!(sets_frame_pointer(&[0x55, 0x48, 0x8b, 0xec]));
    assert!(sets_frame_pointer(&[
        0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5
    ]));
    // An argument move scheduled in between (python3.15's PyObject_* functions).
    assert!(sets_frame_pointer(&[
        0x55, 0x49, 0x89, 0xfc, 0x48, 0x89, 0xe5, 0x41
    ]));
    // push %rbp then no frame: %rbp saved as a callee-saved register only.
    assert!(!sets_frame_pointer(&[0x55, 0x53, 0x48, 0x83, 0xec, 0x08]));
    // mov %rsp,%rbp without the push first.
    assert!(!sets_frame_pointer(&[0x48, 0x89, 0xe5, 0x55]));
    // glibc's malloc (push %r12), free (test %rdi,%rdi), truncated heads.
    assert!(!sets_frame_pointer(&[0x41, 0x54, 0x55, 0x53]));
    assert!(!sets_frame_pointer(&[0x48, 0x85, 0xff, 0x0f, 0x84]));
    assert!(!sets_frame_pointer(&[0x55, 0x48]));
    assert!(!sets_frame_pointer(&[0xf3, 0x0f, 0x1e, 0xfa]));
    assert!(!sets_frame_pointer(&[]));
}

#[test]
fn tells_builds_with_frame_pointers_from_builds_without() {
    // Debian 12 builds its libc without frame pointers.
    let libc = ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
    let (with, of) = libc.frame_pointer_functions();
    assert!(of >= 1000, "{with}/{of}");
    assert!(!libc.keeps_frame_pointers(), "{with}/{of}");
    // The same C code compiled both ways.
    let dir = std::env::temp_dir().join(format!("leaktrace-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("f.c");
    let mut code = String::from("extern int g(int *, int);\n");
    for n in 0..40 {
        code += &format!(
            "int f{n}(int *p, int x) {{ int s = 0; for (int i = 0; i < x; i++) s += p[i] * {n} + g(p, i); return s; }}\n"
        );
    }
    std::fs::write(&src, code).unwrap();
    for (flag, expected) in [
        ("-fno-omit-frame-pointer", true),
        ("-fomit-frame-pointer", false),
    ] {
        let so = dir.join(format!("f{flag}.so"));
        let status = std::process::Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", flag, "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .expect("cc is installed (./dev setup)");
        assert!(status.success());
        let elf = ElfFile::open(&so).unwrap();
        assert_eq!(
            elf.keeps_frame_pointers(),
            expected,
            "{flag}: {:?}",
            elf.frame_pointer_functions()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn glibc_free_moves_past_test() {
    // test %rdi,%rdi ; je ...
    assert_eq!(
        probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55]),
        3
    );
}

#[test]
fn glibc_malloc_stays_on_push() {
    // push %r12
    assert_eq!(probe_offset(&[0x41, 0x54, 0x55, 0x53]), 0);
}

#[test]
fn cmpb_rip_then_push_or_je() {
    // posix_memalign: cmpb $0x0,0x140201(%rip) ; push %r12
    let pm = [0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];
    assert_eq!(probe_offset(&pm), 7);
    // memalign: cmpb ... ; je
    let ma = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
    assert_eq!(probe_offset(&ma), 7);
}

#[test]
fn not_moved_when_next_is_not_emulated() {
    // calloc: push %r13 is emulated at 0 already
    assert_eq!(probe_offset(&[0x41, 0x55, 0x48, 0x89, 0xf8]), 0);
    // reallocarray: mov %rsi,%rax — nothing to skip
    assert_eq!(probe_offset(&[0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2]), 0);
    // test %rdi,%rdi ; mov ... : the second is not emulated either
    assert_eq!(probe_offset(&[0x48, 0x85, 0xff, 0x48, 0x89, 0xf8]), 0);
    // truncated head
    assert_eq!(probe_offset(&[0x48, 0x85]), 0);
    assert_eq!(probe_offset(&[]), 0);
}

#[test]
fn test_with_memory_operand_is_not_skipped() {
    // test %rdi,(%rax) has modrm mod != 3
    assert_eq!(probe_offset(&[0x48, 0x85, 0x38, 0x74, 0x01]), 0);
}

/// An `.eh_frame_hdr` at `addr` listing functions at `starts` (absolute addresses).
fn eh_frame_hdr(addr: u64, starts: &[u64]) -> Vec<u8> {
    let mut b = vec![1, 0x1b, 0x03, 0x3b];
    b.extend_from_slice(&0x100i32.to_le_bytes());
    b.extend_from_slice(&(starts.len() as u32).to_le_bytes());
    for &s in starts {
        b.extend_from_slice(&((s as i64 - addr as i64) as i32).to_le_bytes());
        b.extend_from_slice(&0i32.to_le_bytes());
    }
    b
}

#[test]
fn eh_frame_hdr_lists_function_starts() {
    let addr = 0x50_0000;
    let hdr = eh_frame_hdr(addr, &[0x40_1000, 0x40_1040, 0x60_0000]);
    assert_eq!(
        eh_frame_hdr_starts(&hdr, addr),
        [0x40_1000, 0x40_1040, 0x60_0000]
    );
    // Truncated, a count larger than the table, out of order, another encoding.
    assert!(eh_frame_hdr_starts(&hdr[..hdr.len() - 1], addr).is_empty());
    let mut big = hdr.clone();
    big[8..12].copy_from_slice(&4u32.to_le_bytes());
    assert!(eh_frame_hdr_starts(&big, addr).is_empty());
    let unsorted = eh_frame_hdr(addr, &[0x40_1040, 0x40_1000]);
    assert!(eh_frame_hdr_starts(&unsorted, addr).is_empty());
    let mut enc = hdr.clone();
    enc[3] = 0x1b;
    assert!(eh_frame_hdr_starts(&enc, addr).is_empty());
    assert!(eh_frame_hdr_starts(&[], addr).is_empty());
    assert!(eh_frame_hdr_starts(&[2, 0x1b, 0x03, 0x3b], addr).is_empty());
}

#[test]
fn libc_functions_start_where_eh_frame_hdr_says() {
    let elf = ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
    let malloc = elf.function("malloc").unwrap().vaddr;
    let (start, end) = elf.function_range_at(malloc).expect("malloc has an FDE");
    assert!(start == malloc && end > malloc && end - malloc < 0x10000);
    assert!(elf.function_range_at(malloc + 1).is_none());
    assert!(elf.is_code(malloc) && !elf.is_code(elf.object("environ").unwrap_or(0)));
}

#[test]
fn reads_libc_functions() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let elf = ElfFile::open(libc).expect("Debian's libc is present on this machine kind");
    let malloc = elf.function("malloc").expect("libc exports malloc");
    let free = elf.function("free").expect("libc exports free");
    assert_ne!(malloc.file_offset, free.file_offset);
    assert!(!malloc.head.is_empty());
    let data = std::fs::read(libc).unwrap();
    let at = free.file_offset as usize;
    assert_eq!(&data[at..at + free.head.len()], &free.head[..]);
}
